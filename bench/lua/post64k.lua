-- The 64 KiB POST of the "post-64k" workload; the body must equal apps.POST_BODY.
wrk.method = "POST"
wrk.body = string.rep("0123456789abcdef", 4096)
wrk.headers["Content-Type"] = "application/octet-stream"
