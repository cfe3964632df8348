"""`sdxs-rt serve`: one loaded model behind a job queue, spoken to over HTTP.

Layers inside: `config` (limits, auth, folders: plain data), `runtime` (the pipeline, the job
queue, saving, progress for polling clients), `http_errors` (our errors -> HTTP statuses, in one
table), the routers (`a1111`, `openai_images`, `jobs_api`), and `app` that assembles them. The
Ray Serve deployment (`ray_app`) wraps the same app. Needs the `[serve]` extra.
"""
