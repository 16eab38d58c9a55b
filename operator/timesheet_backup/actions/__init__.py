"""The act layer: what executes the decisions (decisions/) against the cluster and the bucket
-- Kubernetes calls, S3 calls, status writes, Events, the per-database lock. handlers/ keeps
only the kopf entry points that gather observations, call a decision and hand its result
here."""
