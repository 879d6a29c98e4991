-- What each answered model call cost, at the price its run was pinned to (issue #18).
--
-- A sub-agent that times out or is terminated leaves its parent no result and no failure
-- details to read its spending from; the parent reads it here instead, summed over the
-- sub-agent's workflow and every workflow under it (ids `{child}/...`). Null: the call was
-- not priced (no STEAD_MODEL_PRICES entry, no chain price) or not answered.

alter table stead_model_calls add column cost_usd double precision;

-- The sub-tree read is a prefix range on workflow_id (`~>=~` / `~<~`), which the primary
-- key's index (the database's collation) cannot serve.
create index stead_model_calls_subtree on stead_model_calls (workflow_id text_pattern_ops);
