"""Load tests: ``locustfile.py`` (the traffic and its checks), ``harness.py`` (a real server,
its memory, the verdict), ``test_load.py`` (CI) and ``python -m tests.load`` (soak runs)."""
