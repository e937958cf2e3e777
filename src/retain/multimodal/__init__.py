"""Image-text-to-text models (LLaVA family): the miniature MLLM and its batches (issue 8)."""
