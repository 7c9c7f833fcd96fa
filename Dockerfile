# The one image every component runs (controller, node agent, ztunnel).
#   docker build -t ghcr.io/ambientmesh/ambientmesh:0.1.0 .
# Debian 12 like the development machines: python3-bpfcc is Debian's BCC (the PyPI "bcc" is an
# unrelated package). Kernel headers are not baked in: BCC compiles against the node's, mounted
# from the host (/lib/modules, /usr/src), or the kernel's own (CONFIG_IKHEADERS).
FROM debian:12-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 python3-venv python3-bpfcc iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/ambientmesh
COPY requirements.lock pyproject.toml ./
# --system-site-packages: Debian's bcc lives in the system site-packages.
RUN python3 -m venv --system-site-packages /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir -r requirements.lock
COPY api ./api
COPY common ./common
COPY sources ./sources
COPY controller ./controller
COPY ztunnel ./ztunnel
COPY node_agent ./node_agent
COPY bpf ./bpf
COPY localcluster ./localcluster
COPY ambientctl ./ambientctl
COPY samples ./samples
COPY manifests ./manifests
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps . \
 && python3 -c "import compileall; compileall.compile_dir('/opt/ambientmesh', quiet=1)"

ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1
# Components choose their own user in the manifests (the controller runs as 1337).
ENTRYPOINT []
