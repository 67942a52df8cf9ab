"""The detector's model: vocabulary, embeddings, DReAM and attention variants, calibration.

Knows nothing of bcc, the kernel or the service.
"""
