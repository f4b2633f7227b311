"""Reading a dataset: discovery (layouts, manifests), annotations, decoding, the store, whole-scan reuse."""
