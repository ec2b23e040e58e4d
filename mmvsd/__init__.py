"""mmvsd: lossless multimodal speculative decoding and VSD drafter training."""
