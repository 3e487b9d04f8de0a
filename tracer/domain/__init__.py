"""Domain arithmetic with one definition each, shared by the live
aggregation, replay, report and the Parquet sinks. Pure functions, no I/O.

    outcomes.py    connect outcomes: names, what counts as a failure or a timeout
    pools.py       pool sizing (Little's law) and the verdict text
    listeners.py   the identity of a listening socket (its key and its label)
    durations.py   how a duration is written
    addresses.py   how an address and an endpoint are written
    memory.py      memory per connection, its projection to 1,000 connections, how a size is written
"""
