"""Curation: a site's delivery made into cases ready to release.

Indexing the DICOM drop, choosing the CT and PET series, geometry checks,
conversion to NIfTI, metadata, segmentations and label tables, case numbers,
and the configuration and state every stage shares.  Plain functions on paths
and records; no Prefect (that is :mod:`flows`).
"""
