"""Object storage and local scratch: the S3 client, the clips stages store, uploads, the scratch quota and S3 call
spans."""
