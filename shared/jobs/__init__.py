"""The job domain: the public contracts and their schemas, the pipeline's stages and routes, the request rules, ids,
timecodes, fingerprints, job views and feeds, API keys."""
