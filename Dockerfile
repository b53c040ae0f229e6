# syntax=docker/dockerfile:1
# imgtrain training image.
#
#   GPU (default): docker build -t imgtrain:0.1.0 .
#   CPU only:      docker build -t imgtrain:0.1.0-cpu --build-arg VARIANT=cpu \
#                    --build-arg BUILD_BASE=ubuntu:22.04 --build-arg RUNTIME_BASE=ubuntu:22.04 .
#   Run:           docker run --gpus all -v "$PWD/data:/data" imgtrain:0.1.0 train --config /data/cfg.yaml --output /data/runs/x
#
# TensorFlow is installed from pyproject.toml's `gpu` (tensorflow[and-cuda]) or
# `cpu` extra, so the image and a laptop run the same pinned version. Horovod is
# built by launch/install_horovod.sh (gloo, OpenMPI, and NCCL in the GPU
# variant) in a CUDA devel stage; the runtime stage gets only the virtualenv.

ARG BUILD_BASE=nvidia/cuda:12.5.1-cudnn-devel-ubuntu22.04
ARG RUNTIME_BASE=nvidia/cuda:12.5.1-cudnn-runtime-ubuntu22.04

FROM ${BUILD_BASE} AS build
ARG VARIANT=gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Versions of OS packages follow the pinned base image's Ubuntu release.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev g++ make cmake git \
        openmpi-bin libopenmpi-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY imgtrain ./imgtrain
COPY launch ./launch
COPY configs ./configs
# Behind a TLS-intercepting proxy, pass its CA bundle as a build secret (never stored in a
# layer): --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt
# The second install is the project itself from /src, whose dependencies pyproject.toml pins;
# the mlflow extra makes --mlflow work in the image as on a laptop, s3 and gcs its bucket URLs.
# hadolint ignore=DL3013
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && pip install pip==24.3.1 setuptools==75.8.0 wheel==0.45.1 \
    && pip install ".[${VARIANT},mlflow,s3,gcs]"
# NCCL's headers and library come with tensorflow[and-cuda]'s nvidia-nccl wheel.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && if [ "${VARIANT}" = gpu ]; then \
        NCCL_HOME="$(python -c 'import nvidia.nccl, os; print(os.path.dirname(nvidia.nccl.__file__))')"; \
        ln -sf "${NCCL_HOME}/lib/libnccl.so.2" "${NCCL_HOME}/lib/libnccl.so"; \
        export NCCL_HOME; \
    fi \
    && bash launch/install_horovod.sh /opt/venv/bin/python

FROM ${RUNTIME_BASE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# OpenMPI so horovodrun/mpirun work inside; OpenSSH for MPIJob workers; tini as PID 1, which
# passes SIGTERM (docker/podman stop, a pod's termination) on to imgtrain's process group and
# reaps what the launchers leave.
# hadolint ignore=DL3008
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3 openmpi-bin openssh-client openssh-server tini \
    && rm -rf /var/lib/apt/lists/*
# The user is 1000:1000, as the Kubernetes manifests' securityContext says.
RUN useradd --create-home --uid 1000 --user-group --shell /bin/bash imgtrain \
    && mkdir -p /data /home/imgtrain/.ssh /home/imgtrain/.sshd \
    && ssh-keygen -q -t ed25519 -N "" -f /home/imgtrain/.sshd/host_ed25519_key \
    && printf '%s\n' "Port 2222" "HostKey /home/imgtrain/.sshd/host_ed25519_key" \
        "PidFile /tmp/sshd.pid" "AuthorizedKeysFile /home/imgtrain/.ssh/authorized_keys" \
        "StrictModes no" "UsePAM no" "PasswordAuthentication no" > /home/imgtrain/.sshd/sshd_config \
    && printf '%s\n' "Host *" "  Port 2222" "  StrictHostKeyChecking no" "  UserKnownHostsFile /dev/null" \
        > /etc/ssh/ssh_config.d/imgtrain.conf \
    && chown -R imgtrain:imgtrain /data /home/imgtrain
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src /opt/imgtrain
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 \
    OMPI_MCA_plm_rsh_args="-p 2222"
LABEL org.opencontainers.image.title="imgtrain" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Image-classification training on TensorFlow with MultiWorkerMirroredStrategy and Horovod"
USER 1000:1000
WORKDIR /data
VOLUME ["/data"]
# On SIGTERM imgtrain writes a checkpoint at the step it reached and exits 143; the same
# command again resumes (README: Preemption).
ENTRYPOINT ["tini", "-g", "--", "imgtrain"]
CMD ["--help"]
