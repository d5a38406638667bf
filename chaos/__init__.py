"""`make chaos`: a Jepsen-style run of the whole local system under faults.

Careful clients drive the system through the gateway and record every operation as they saw
it (history.py); a fault schedule kills processes, slows or fails promotion through the
mesh, takes NATS and PostgreSQL away (faults.py); once the faults stop and the system has
settled, the end state is read through the public APIs and, for what no API shows, the
databases read-only (observe.py), and the checker holds the history against it
(checker.py). The report is a table, JSON and a PNG timeline (report.py). docs/chaos.md
describes the run, the invariants and how to read a violation.
"""
