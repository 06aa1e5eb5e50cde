"""CenterCLIP: token clustering for fast text-video retrieval, as a Transformers plug-in.

Importing this package registers `CenterCLIPConfig`, `CenterCLIPModel` and `CenterCLIPProcessor` with the
`AutoConfig` / `AutoModel` / `AutoProcessor` factories, and the `zero-shot-video-classification` and
`video-text-retrieval` tasks with `transformers.pipeline`.
"""

from transformers import AutoConfig, AutoModel, AutoProcessor

from .clustering import kmedoids, spectral_clustering
from .configuration_centerclip import CenterCLIPConfig
from .modeling_centerclip import CenterCLIPModel, CenterCLIPOutput, CenterCLIPVideoOutput, NonFiniteTokensError
from .pipeline_centerclip import VideoTextRetrievalPipeline, ZeroShotVideoClassificationPipeline, register_pipelines
from .processing_centerclip import CenterCLIPProcessor

AutoConfig.register("centerclip", CenterCLIPConfig, exist_ok=True)
AutoModel.register(CenterCLIPConfig, CenterCLIPModel, exist_ok=True)
# save_pretrained writes `auto_map` and copies this code, so Hub folders load with trust_remote_code=True.
CenterCLIPConfig.register_for_auto_class()
CenterCLIPModel.register_for_auto_class("AutoModel")
AutoProcessor.register(CenterCLIPConfig, CenterCLIPProcessor, exist_ok=True)
CenterCLIPProcessor.register_for_auto_class()
register_pipelines()

__all__ = [
    "CenterCLIPConfig",
    "CenterCLIPModel",
    "CenterCLIPOutput",
    "CenterCLIPProcessor",
    "CenterCLIPVideoOutput",
    "NonFiniteTokensError",
    "VideoTextRetrievalPipeline",
    "ZeroShotVideoClassificationPipeline",
    "kmedoids",
    "spectral_clustering",
]
