# celebxai API image: the service and the committed default model bundle.
#
#   docker build -t celebxai .                          # CPU (onnxruntime)
#   docker build -t celebxai:gpu --build-arg EXTRAS=gpu .   # CUDA (onnxruntime-gpu)
#   docker build -t celebxai:ray --build-arg EXTRAS=ray .   # with Ray Serve: python -m service --ray,
#                                                           # and the image of a KubeRay RayService
#
# TORCH_INDEX_URL, when given, is searched for torch first (e.g. PyTorch's CPU-only wheel index,
# which makes the CPU image several GB smaller than the default CUDA-enabled torch wheels).
FROM python:3.11-slim

ARG EXTRAS=""
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CELEBXAI_HOST=0.0.0.0 \
    CELEBXAI_PORT=8000 \
    CELEBXAI_MODEL=/app/models/celebs8 \
    OMP_WAIT_POLICY=PASSIVE
# No MALLOC_* variables: the service sets its own malloc policy at start-up (service/inference/allocator.py;
# docs/operations.md, "Memory"), so the image runs exactly what `python -m service` runs anywhere.

WORKDIR /app
RUN useradd --create-home --uid 10001 celebxai

COPY pyproject.toml README.md ./
COPY service ./service
COPY models ./models

# onnxruntime and onnxruntime-gpu install the same module: for the gpu extra, keep only the GPU one
RUN if [ -n "$TORCH_INDEX_URL" ]; then pip install --extra-index-url "$TORCH_INDEX_URL" torch; fi \
 && if [ -n "$EXTRAS" ]; then pip install ".[$EXTRAS]"; else pip install .; fi \
 && if [ "$EXTRAS" = "gpu" ]; then \
        pip uninstall -y onnxruntime onnxruntime-gpu && pip install "onnxruntime-gpu>=1.18,<2"; \
    fi

USER celebxai
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=4)"]
CMD ["python", "-m", "service"]
