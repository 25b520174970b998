# Sluice in a container: `sluice serve` by default, `sluice worker` (or any command) as the
# command. UNTESTED: no Docker engine runs where Sluice is built (docs/operations.md says
# what was checked instead). The container needs DATABASE_URL: the embedded PostgreSQL is
# for a developer's machine, and is left out of the image (--omit=optional drops its
# binaries). Listening beyond loopback needs SLUICE_API_TOKEN (serve refuses without it).
FROM node:24-bookworm-slim

WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --omit=optional --no-audit --no-fund && npm cache clean --force
COPY bin ./bin
COPY src ./src
COPY migrations ./migrations
COPY examples ./examples

ENV NODE_ENV=production \
    SLUICE_HOST=0.0.0.0 \
    SLUICE_PORT=8080
# The project's files stay root's; the compile cache and SLUICE_HOME go where `node` may write.
ENV NODE_COMPILE_CACHE=/tmp/sluice-compile-cache \
    SLUICE_HOME=/tmp/sluice
USER node
EXPOSE 8080
ENTRYPOINT ["./bin/sluice"]
CMD ["serve"]
