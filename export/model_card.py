"""The export directory's README.md: what the model is, how each variant did at its gate, how fast
it ran at export, and how to use it. Written from the manifest, so it states only what was measured."""
from __future__ import annotations

from typing import Any

PROVIDER_NAMES = {"CPUExecutionProvider": "CPU", "CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT"}


def _machine(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU"
    return f"{info['cpu']} ({info['cpu_count']} cores, {info.get('memory_gib')} GiB){gpu}"


def _variant_rows(manifest: dict[str, Any]) -> list[str]:
    rows = ["| variant | files | size MB | for | min cosine (image / text) | R@1 i2t / t2i (PyTorch: same images) | "
            "gate | caption p50 ms | image p50 ms |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name, v in manifest["variants"].items():
        g, lat = v["gate"], v["latency_cpu"]
        onnx, ref = g["retrieval"]["onnx"], g["retrieval"]["pytorch"]
        rows.append(
            f"| {name} | `{v['files']['image']}`, `{v['files']['text']}` | {v['bytes'] / 1e6:.1f} | "
            f"{', '.join(PROVIDER_NAMES.get(p, p) for p in v['providers'])} | "
            f"{g['min_cosine']['image']:.6f} / {g['min_cosine']['text']:.6f} | "
            f"{onnx['i2t_r1']:.1f} / {onnx['t2i_r1']:.1f} ({ref['i2t_r1']:.1f} / {ref['t2i_r1']:.1f}) | "
            f"cos ≥ {g['threshold']['min_cosine']}, R@1 drop ≤ {g['threshold']['max_r1_drop']}: "
            f"{'passed' if g['passed'] else 'FAILED'} | "
            f"{lat['caption_encoding_batch1']['p50_ms']:.2f} | {lat['image_encoding_batch1']['p50_ms']:.2f} |")
    return rows


def model_card(manifest: dict[str, Any]) -> str:
    image, text = manifest["image"], manifest["text"]
    gate = manifest["variants"]["fp32"]["gate"]
    if image["input"] == "pixel_values":
        pre = image["preprocess"]
        image_line = (f"RGB images: shorter side resized to {pre['resize']} ({pre['interpolation']}), centre crop "
                      f"{pre['size']}, normalised with mean {pre['mean']} and std {pre['std']}")
    else:
        image_line = f"region features: {image['regions']} regions x {image['feature_dim']} dims, with a validity mask"
    lines = [
        "# itr-distill student (ONNX)",
        "",
        "A dual encoder for image-text retrieval, distilled from a cross-attention teacher by itr-distill: "
        "images and captions are embedded independently into one space and compared by dot product.",
        "",
        f"- Embedding: {manifest['embedding_dim']} dims, L2-normalised (`embeddings` output of both graphs).",
        f"- Image input: {image_line}.",
        f"- Text input: `input_ids`, `attention_mask` (int64), tokenizer in `{text['tokenizer']}`, at most "
        f"{text['max_length']} tokens.",
        f"- Source checkpoint: `{manifest['source_checkpoint']['path']}` (sha256 `{manifest['source_checkpoint']['sha256'][:16]}…`).",
        f"- Exported with torch {manifest['versions']['torch']} ({manifest['exporter']} exporter, opset {manifest['opset']}), "
        f"checked with onnx {manifest['versions']['onnx']} and onnxruntime {manifest['versions']['onnxruntime']}.",
        "",
        "## Variants and their gates",
        "",
        f"Every variant was loaded by the torch-free runtime and compared with the PyTorch student: embedding "
        f"cosine on batches of {gate['batch_sizes']} and captions of {gate['text_lengths']} tokens, and retrieval "
        f"R@1 on {gate['retrieval']['images']} held-out images with {gate['retrieval']['captions']} captions. "
        f"Latency: batch-1 encoding on the CPU provider at export time, on {_machine(manifest['measured_on'])}. "
        "fp16 is meant for GPUs: on the CPU provider ONNX Runtime computes in float32 where it lacks fp16 "
        "kernels, so its CPU gate measures the rounding of the weights.",
        "",
        *_variant_rows(manifest),
        "",
        "## Use",
        "",
        "```python",
        "from export.runtime import OnnxStudent      # onnxruntime + tokenizers + numpy + Pillow, no torch",
        "model = OnnxStudent(\"EXPORT_DIR\", variant=\"fp32\", providers=\"cpu\")  # or \"cuda\", \"tensorrt\"",
        "images = model.encode_image_files([\"a.jpg\", \"b.jpg\"])",
        "captions = model.encode_text([\"a dog runs on the beach\"])",
        "scores = captions @ images.T",
        "```",
        "",
        "```",
        "itr-distill search EXPORT_DIR --gallery IMAGE_DIR --query \"a dog runs on the beach\"",
        "```",
        "",
        _sentence_transformer_line(text),
        "",
    ]
    return "\n".join(lines)


def _sentence_transformer_line(text: dict) -> str:
    if text["sentence_transformer"] is None:
        return ("The caption encoder has parts (self-guided pooling, memory banks or a local space) that a "
                "sentence-transformers directory cannot hold: use the ONNX graphs.")
    return ("The text encoder alone also loads with sentence-transformers: "
            f"`SentenceTransformer(\"EXPORT_DIR/{text['sentence_transformer']}\")`.")
