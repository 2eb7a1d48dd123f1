"""Segmentation with a fine-tuned GVSL model: the network and its checkpoint, sliding-window inference,
label maps in the input's geometry."""
from gvsl.segment.inference import predict_probabilities
from gvsl.segment.model import (
    SegmentationInfo,
    SegmentationNet,
    describe_segmentation,
    load_segmentation_model,
    segmentation_payload,
)
from gvsl.segment.segment import segment_image, segment_with, write_segmentation

__all__ = ["SegmentationInfo", "SegmentationNet", "describe_segmentation", "load_segmentation_model",
           "predict_probabilities", "segment_image", "segment_with", "segmentation_payload", "write_segmentation"]
