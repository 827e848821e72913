"""chatd's benchmark suite: a load generator that talks only the public protocol.

``python benchmarks/run.py WORKLOAD`` (see benchmarks/README.md). The
orchestrating process starts the server, the fixtures and the client worker
processes; nothing here imports chatd's server code into a process that
generates load or measures the PostgreSQL ceiling.
"""
