"""Release: the public zip made from prepared cases, and its verification.

Spreadsheets, dataset card, checksums, the deterministic zip writer, assembly
(:func:`release.assemble.assemble_release`) and
:func:`release.verify.verify_release`.
"""
