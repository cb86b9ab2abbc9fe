"""Fixed references that benchmarks run side by side with the bridge, in the same run."""
