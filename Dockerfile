# The shardgate image: nothing but the statically linked binary (scripts/image.sh builds it
# into target/docker/shardgate first; no base image is pulled, no network is needed).
# One image for every role: `manager`, `lb`, and the `node`s the manager's docker spawner
# starts.
FROM scratch
COPY target/docker/shardgate /shardgate
EXPOSE 5000 5001 5002
ENTRYPOINT ["/shardgate"]
CMD ["--help"]
