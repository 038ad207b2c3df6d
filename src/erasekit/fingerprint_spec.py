"""What a base-weight fingerprint holds: written by ``models.adapter``, checked by ``edit_format``.

A fingerprint is the SHA-256 of a layer's bytes (exact identity) plus a sketch of ``SKETCH_N``
normalised bilinear probes uᵀWr with seeded u, r (the same model in another dtype).
"""

SKETCH_N = 8  # probes in a fingerprint's sketch
