"""How much one DICOM file may hold: the limits every reader applies (no pydicom import).

:mod:`curation.dicomfile` enforces them; the index names them in its stat cache's
context without importing pydicom, so a run over an unchanged drop imports none.
"""

from __future__ import annotations

#: Rows x Columns x NumberOfFrames x BitsAllocated/8 x SamplesPerPixel of one file, at most
#: (an enhanced CT of 2000 slices of 1024 x 1024 at 16 bits; a single CT slice is 0.5-2 MiB).
MAX_IMAGE_BYTES = 4 << 30
#: What a dataset may hold besides its pixel data (an enhanced object's per-frame functional
#: groups are a few MB; a single-frame header a few KB).
MAX_HEADER_BYTES = 16 << 20
#: A file larger than this is not read.
MAX_FILE_BYTES = MAX_IMAGE_BYTES + MAX_HEADER_BYTES
