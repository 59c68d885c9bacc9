"""Report generators: docs/RESULTS.md (``results.py``) and its sections, the deployment report, the
reproduction script."""
