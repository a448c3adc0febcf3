# GPU image of this repository: TensorFlow 2.21 + Keras 3 with CUDA, the project's pinned requirements, and
# Horovod built with NCCL. Build and run: docs/docker.md. (Not built in this repository's CI: it has no GPU
# and no Docker engine; tests/test_dockerfile.py checks what can be checked without building.)
#
#   docker build -t efficientnet-tf2:gpu .
#   docker run --gpus all --rm -it --ipc=host -v /path/to/imagenet:/data -v $PWD/results:/results efficientnet-tf2:gpu
#
# The base is TensorFlow's own GPU image of the pinned release (same TensorFlow as requirements-gpu.txt, so
# pip keeps it). Any image with Python 3.11+, TensorFlow 2.21 and CUDA 12 works: --build-arg BASE_IMAGE=...
ARG BASE_IMAGE=tensorflow/tensorflow:2.21.0-gpu
FROM ${BASE_IMAGE}

# CUDA compiler, runtime headers and NCCL headers for Horovod's NCCL build, from NVIDIA's CUDA apt repository
# (the TensorFlow image carries CUDA's runtime libraries as pip wheels, not the toolkit). CUDA_APT_VERSION
# must match TensorFlow's CUDA major version (12); CUDA_REPO the image's Ubuntu release.
ARG CUDA_REPO=ubuntu2204
ARG CUDA_APT_VERSION=12-5
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git python3-venv \
 && curl -fsSL -o /tmp/cuda-keyring.deb \
      "https://developer.download.nvidia.com/compute/cuda/repos/${CUDA_REPO}/x86_64/cuda-keyring_1.1-1_all.deb" \
 && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
 && apt-get update \
 && apt-get install -y --no-install-recommends "cuda-nvcc-${CUDA_APT_VERSION}" "cuda-cudart-dev-${CUDA_APT_VERSION}" \
      "cuda-nvml-dev-${CUDA_APT_VERSION}" libnccl2 libnccl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /workspace/efficientnet

# A venv that sees the base image's TensorFlow (--system-site-packages), so installing the pins does not
# download TensorFlow again, while everything this project adds stays in /opt/venv (where
# scripts/install_horovod.sh expects horovodrun next to the interpreter).
ENV VIRTUAL_ENV=/opt/venv
RUN python3 -m venv --system-site-packages "$VIRTUAL_ENV"
ENV PATH="/opt/venv/bin:${PATH}"

# Requirements first: the layer is rebuilt only when the pins change, not on every source edit.
COPY requirements-gpu.txt ./
RUN pip install --no-cache-dir -r requirements-gpu.txt

# Horovod with NCCL allreduce (its own wheel cache key: 0.28.1+tf2.21.0.patch1.nccl). The script is the one the
# project documents for GPU machines (docs/horovod.md) and checks horovodrun --check-build at the end.
COPY scripts/install_horovod.sh scripts/
RUN PYTHON=/opt/venv/bin/python HOROVOD_GPU_OPERATIONS=NCCL HOROVOD_CUDA_HOME=/usr/local/cuda \
      HOROVOD_NCCL_HOME=/usr HOROVOD_WHEEL_CACHE=/tmp/horovod-wheels scripts/install_horovod.sh \
 && rm -rf /tmp/horovod-wheels /root/.cache/pip

COPY . .

# The recipes' defaults inside the container: ImageNet mounted at /data, results at /results.
ENV DATA_DIR=/data OUTPUT_DIR=/results PYTHON=/opt/venv/bin/python TF_CPP_MIN_LOG_LEVEL=1
CMD ["bash"]
