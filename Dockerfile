# Self-hosted chatops: the bot and local training in one container.
#   docker build -t chatops .
#   docker run -v chatops-data:/data -e CHATOPS_TELEGRAM__TOKEN=... chatops   # the examples' kinds: `train` works
# Your own kinds: one folder with chatops.toml and the scripts it names, mounted over the examples:
#   docker run -v chatops-data:/data -v $PWD/mykinds:/etc/chatops:ro -e CHATOPS_TELEGRAM__TOKEN=... chatops
# With the Ray executor (jobs on a cluster; the same image serves as Ray head and worker):
#   docker build --build-arg EXTRAS=telegram,slack,email,wechat,ray -t chatops:ray .
FROM python:3.11-slim-bookworm

ARG EXTRAS=telegram,slack,email,wechat

RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 chatops \
    && mkdir /data /shared && chown chatops /data /shared

WORKDIR /app
COPY pyproject.toml README.md ./
COPY chatops ./chatops
COPY adapters ./adapters
COPY jobs ./jobs
# The config folder: chatops.toml and the scripts its kinds name, side by side (relative paths in
# [kinds] start beside the config file). The examples train as shipped; mount your own folder here.
COPY examples /etc/chatops
# One resolver step keeps numpy below 1.24 for MXNet 1.9.1.
RUN pip install --no-cache-dir ".[${EXTRAS}]" "numpy<1.24"

USER chatops
ENV CHATOPS_DATA_DIR=/data CHATOPS_HEALTH__LISTEN=0.0.0.0:8080 CHATOPS_CONFIG=/etc/chatops/chatops.toml
VOLUME ["/data"]
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=4)"
ENTRYPOINT ["chatops"]
CMD ["run"]
