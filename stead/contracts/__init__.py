"""The typed objects that cross process boundaries and are pinned in history: payload models, the
policy, search attributes, the audit chain."""
