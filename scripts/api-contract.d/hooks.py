"""Keep schemathesis's generated requests from reaching outside the test:
the service runs them as they come, and some act on the host at once.

- A repository `location` that is a plain path goes under the run's scratch
  directory (an admin may name any path, and registering with `init`
  creates a repository there).
- An S3 repository is not created during the call (`init` becomes false):
  the endpoint would be any host of the generated data.

Only values that are valid as they are get changed, into other valid
values, so a request schemathesis made invalid on purpose stays invalid.
"""

import os
import uuid

import schemathesis

SCRATCH = os.environ["BACKSTOP_CONTRACT_SCRATCH"]


def _clean(text):
    return isinstance(text, str) and 0 < len(text) <= 1000 and all(c.isprintable() for c in text)


@schemathesis.hook
def map_body(context, body):
    op = context.operation
    if op is None or op.path != "/api/v1/repositories" or op.method.upper() != "POST" or not isinstance(body, dict):
        return body
    location = body.get("location")
    if _clean(location):
        if location.startswith("s3://"):
            if isinstance(body.get("init"), bool):
                body["init"] = False
        else:
            body["location"] = os.path.join(SCRATCH, "repos", uuid.uuid4().hex)
    return body
