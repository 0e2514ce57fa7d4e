"""Tools around the pipeline: the local cluster, the report, cost, the changed cells, the
Vagrant catalog."""
