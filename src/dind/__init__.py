"""dind: Diffusion in Diffusion."""
