"""Side-by-side benchmarks: our stack versus raw vLLM, and the graph versus the bare ingress."""
