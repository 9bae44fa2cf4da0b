# CogVideoX Studio on an NVIDIA GPU host: docker run --gpus all -p 7860:7860 -v $PWD/workspace:/app/workspace IMAGE
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/app/workspace/hf-cache

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY requirements.txt requirements-gpu.txt ./
# The pinned torch resolves to its CUDA build on Linux x86_64. DeepSpeed's source package builds
# against that torch (no build isolation); its CUDA kernels compile when first used.
RUN pip install -r requirements.txt \
 && DS_BUILD_OPS=0 pip install --no-build-isolation -r requirements-gpu.txt

COPY . .
EXPOSE 7860
# Inside a container the app must listen on all interfaces; set --auth for anything public.
CMD ["python", "app.py", "--host", "0.0.0.0", "--port", "7860", "--workspace", "/app/workspace"]
