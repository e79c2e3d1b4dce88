"""The DICOM gateway: series arrive by C-STORE, go to a prediction service, and their results go out by C-STORE or STOW-RS.

Hospitals wire AI services the way they wire scanners: by AE title, host and port. The gateway takes
what a PACS or a modality sends (`listener`), keeps every acknowledged instance on disk until its
results are delivered (`spool`), decides when a series is whole (`worker`, after a quiet time), picks a
prediction service by rules (`rules`), and sends the results where the rule says (`sender`). See docs/gateway.md.
"""
