"""Model definitions: Wan DiT, Wan VAE, the tiny model's autoencoder, text encoders, configs."""
