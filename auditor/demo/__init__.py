"""The bundled offline demo, the synthetic image generator and the multi-domain validation suite."""
