# scalable_agent2 with DeepMind Lab, on Ubuntu 24.04 LTS and Python 3.11.
#
#   docker build -t scalable_agent2 .                                  # CPU TensorFlow
#   docker build -t scalable_agent2:gpu --build-arg TF_VARIANT=gpu .   # tensorflow[and-cuda]
#   docker build --build-arg WITH_PSYCHLAB_DATASET=1 ...               # + psychlab stimuli
#   docker run --rm scalable_agent2                # test suite, then a short DMLab training run
#
# Every step is a subcommand of docker/build_dmlab.sh (documented in docs/USAGE.md), so a build
# by hand on Ubuntu 24.04 runs the same commands. Stages: `base` (Python 3.11 virtualenv),
# `dmlab` (DeepMind Lab built with Bazel from a pinned commit into a wheel), `dataset`
# (optional psychlab stimuli) and the final image, which gets the wheel and the data but none
# of the build tools.

ARG UBUNTU_VERSION=24.04

FROM ubuntu:${UBUNTU_VERSION} AS base
ARG PYTHON_VERSION=3.11
ENV PYTHON_VERSION=${PYTHON_VERSION} \
    VENV=/opt/venv \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY docker/build_dmlab.sh /usr/local/bin/build_dmlab.sh
RUN build_dmlab.sh python

FROM base AS dmlab
# github.com/google-deepmind/lab commit; build_dmlab.sh also pins the WORKSPACE dependencies
# that upstream takes from moving branches.
ARG DMLAB_COMMIT=cf2f5250e1a00ecce37b3480df28c3a5dcd08b57
ARG BAZELISK_VERSION=v1.25.0
ARG BAZEL_VERSION=7.4.1
ENV DMLAB_COMMIT=${DMLAB_COMMIT} \
    BAZELISK_VERSION=${BAZELISK_VERSION} \
    BAZEL_VERSION=${BAZEL_VERSION} \
    WHEEL_DIR=/opt/wheels
RUN build_dmlab.sh dmlab

FROM base AS dataset
# 1: download the Brady-Konkle-Oliva (2008) stimuli that psychlab_* levels need.
ARG WITH_PSYCHLAB_DATASET=0
ENV WITH_PSYCHLAB_DATASET=${WITH_PSYCHLAB_DATASET} \
    DATASET_DIR=/opt/dmlab_data/brady_konkle_oliva2008
RUN build_dmlab.sh dataset

FROM base AS final
# cpu: tensorflow from requirements.txt; gpu: tensorflow[and-cuda] of the same version
# (run with `docker run --gpus all`; needs the NVIDIA Container Toolkit on the host).
ARG TF_VARIANT=cpu
ENV TF_VARIANT=${TF_VARIANT} \
    WHEEL_DIR=/opt/wheels \
    DATASET_DIR=/opt/dmlab_data/brady_konkle_oliva2008 \
    PACKAGE_DIR=/opt/scalable_agent2 \
    MPLBACKEND=Agg
RUN build_dmlab.sh runtime
COPY --from=dmlab /opt/wheels /opt/wheels
COPY --from=dataset /opt/dmlab_data /opt/dmlab_data
WORKDIR /opt/scalable_agent2
COPY . .
RUN build_dmlab.sh package
ENV PATH=/opt/venv/bin:${PATH}
CMD ["build_dmlab.sh", "smoke"]
