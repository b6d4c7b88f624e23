# The gateway image: `cardinal serve` (and `cardinal sim`, the simulated cards) with the core
# dependencies and the `gateway` extra only; no planner price map, load generator or plots.
#   docker build -t cardinal:0.1.0 .
# `cardinal render` copies this file and the source it needs into DIR/cardinal-image/, the
# build context its docker-compose.yml names; `render --image NAME` uses a pushed image instead.
FROM python:3.11-slim
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
COPY loadtest ./loadtest
RUN pip install --no-cache-dir '.[gateway]' && rm -rf /src
WORKDIR /
USER 65534:65534
EXPOSE 8080
CMD ["cardinal", "serve", "--config", "/etc/cardinal/gateway.yaml"]
