"""The evidence log, for reports to the authorities: append-only, hash-chained, with signed heads.

records.py: the record format and the chain hash; store.py: the log file and its writer (`EvidenceLog`);
signing.py: Ed25519 keys, key files and signed heads; verify.py: the checks; export.py: incident reports.
The `monitor evidence` command is monitor/cli/evidence.py.
"""
