"""RetouchFormer networks (AAAI 2024), each part in its own module.

- encoder.Encoder (E) and encoder.TokenProjection (multi-scale tokens)
- quantizer.VectorQuantizer (feature dictionary P) and decoders.ReconstructionDecoder (R)
- masknet.TwoStreamMask (H and its EMA twin H̄)
- attention.SelectiveSelfAttention and transformer.Transformer (T, stacked SSABs)
- decoders.SynthesisDecoder (G) and discriminator.PixelDiscriminator (D)
"""
from engine.model.attention import SelectiveSelfAttention
from engine.model.checkpoint import load_model, load_safetensors, read_config, save_model, save_safetensors, transfer_weights
from engine.model.config import ModelConfig
from engine.model.discriminator import PixelDiscriminator
from engine.model.quantizer import VectorQuantizer
from engine.model.retouchformer import Encoded, RetouchFormer, RetouchOutput

__all__ = [
    "Encoded",
    "ModelConfig",
    "PixelDiscriminator",
    "RetouchFormer",
    "RetouchOutput",
    "SelectiveSelfAttention",
    "VectorQuantizer",
    "load_model",
    "load_safetensors",
    "read_config",
    "save_model",
    "save_safetensors",
    "transfer_weights",
]
