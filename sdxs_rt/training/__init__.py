"""Fine-tuning path (issue 4, in progress): data, buckets, the demo dataset; the trainer follows."""
