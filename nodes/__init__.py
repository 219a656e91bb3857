"""Alice's ComfyUI nodes (V1 API). Imported by the package root's __init__.py; ComfyUI reads the two mappings."""

from .finetune import AliceFinetune
from .image_to_video import AliceCLIPVisionLoader, AliceStartImage
from .loaders import AliceLoraLoader, AliceModelLoader, AliceTextEncoderLoader, AliceVAELoader
from .sampling import AliceRCMSampler, AliceTeacherSampler, AliceTextEncode
from .video import AliceSaveVideo, AliceVAEDecode

NODE_CLASS_MAPPINGS = {
    "AliceModelLoader": AliceModelLoader,
    "AliceTextEncoderLoader": AliceTextEncoderLoader,
    "AliceTextEncode": AliceTextEncode,
    "AliceCLIPVisionLoader": AliceCLIPVisionLoader,
    "AliceStartImage": AliceStartImage,
    "AliceRCMSampler": AliceRCMSampler,
    "AliceTeacherSampler": AliceTeacherSampler,
    "AliceVAELoader": AliceVAELoader,
    "AliceVAEDecode": AliceVAEDecode,
    "AliceSaveVideo": AliceSaveVideo,
    "AliceLoraLoader": AliceLoraLoader,
    "AliceFinetune": AliceFinetune,
}
NODE_DISPLAY_NAME_MAPPINGS = {name: cls.DISPLAY_NAME for name, cls in NODE_CLASS_MAPPINGS.items()}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
