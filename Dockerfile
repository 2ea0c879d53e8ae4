FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY common common
COPY accesslog accesslog
COPY proxy proxy
COPY prefetch prefetch
COPY ml ml
COPY bench bench
RUN pip install --no-cache-dir .
EXPOSE 6380 9121
ENTRYPOINT ["predis", "serve", "--host", "0.0.0.0", "--port", "6380"]
