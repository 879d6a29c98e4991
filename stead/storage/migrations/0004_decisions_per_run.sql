-- Decision chains are per run (workflow id + run id), built by the workflow as it decides.
alter table stead_decisions drop constraint stead_decisions_pkey;
alter table stead_decisions add primary key (workflow_id, run_id, seq);
