# One image for web, worker and beat (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# What GET /api/accounting/version reports: docker build --build-arg COMMIT_SHA=$(git rev-parse HEAD)
ARG COMMIT_SHA=""
ENV COMMIT_SHA=${COMMIT_SHA}
COPY requirements/prod.txt requirements/prod.txt
RUN pip install --requirement requirements/prod.txt

COPY . .
# collectstatic reads settings; these build-time values are placeholders, never used at run time.
RUN DJANGO_SETTINGS_MODULE=config.settings.production \
    SECRET_KEY=collectstatic-only-placeholder-value-not-used-at-runtime-000000 \
    API_KEY_PEPPER=collectstatic-only-pepper \
    ALLOWED_HOSTS=localhost DATABASE_URL=postgres://build@localhost/build \
    REDIS_URL=redis://localhost:6379/0 EMAIL_URL=consolemail:// \
    python manage.py collectstatic --noinput

RUN useradd --create-home --uid 1000 app
USER app

EXPOSE 8000
CMD ["gunicorn", "config.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--access-logfile", "-"]
