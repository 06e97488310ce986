"""Anonymization: proving a release holds no identifiers.

The de-identification gate on DICOM headers (:mod:`anonymization.gate`),
defacing of the head in the volumes (:mod:`anonymization.deface`) and the leak
scan of the finished zip (:mod:`anonymization.leakscan`).
"""
