"""The diffusion loss: noise, masks and weights (objective), the LM head applied only where it is
needed (prediction_head), fused with the weighted cross-entropy (linear_cross_entropy), and a
ZeRO-3-sharded head gathered once per micro-batch (engine_gather)."""
