# syntax=docker/dockerfile:1
# One image for every wisp role (scheduler, verifier, edge, client): the command picks the role,
# e.g. `docker run wisp scheduler`. TypeScript runs through tsx (a production dependency), so
# there is no build step; the first stage only installs production dependencies.

ARG NODE_IMAGE=node:20-bookworm-slim

FROM ${NODE_IMAGE} AS deps
WORKDIR /app
# onnxruntime-node's postinstall would fetch CUDA libraries; its bundled CPU runtime is enough.
ENV ONNXRUNTIME_NODE_INSTALL=skip
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production \
    ONNXRUNTIME_NODE_INSTALL=skip \
    NODE_OPTIONS=--enable-source-maps
WORKDIR /app
COPY --from=deps /app/node_modules ./node_modules
# Sources only (see .dockerignore: no tests, no local models, no .git).
COPY . .
# Forged models go to /app/.wisp/models (a volume in docker-compose.yml), owned by the
# unprivileged `node` user (uid 1000) the roles run as.
RUN mkdir -p /app/.wisp/models && chown -R node:node /app/.wisp
USER node
# The Prometheus endpoint, when WISP_METRICS_PORT=9464 (docker-compose.yml sets it).
EXPOSE 9464
ENTRYPOINT ["node", "bin/wisp.js"]
CMD ["--help"]
