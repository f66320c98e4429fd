"""The lifecycle of one server through openstacksdk, unmodified, against `kangaroo serve`.

Run by orchestrator/tests/openstack.rs with the virtualenv's interpreter and the OS_* variables
set. Prints one JSON object with what each step saw; the Rust test asserts on it and on
Kangaroo's own state. Every wait is bounded.
"""

import json
import os
import sys

import openstack
from openstack import exceptions


def main():
    name, network = sys.argv[1], sys.argv[2]
    conn = openstack.connect(
        auth_url=os.environ["OS_AUTH_URL"],
        username=os.environ["OS_USERNAME"],
        password=os.environ["OS_PASSWORD"],
        project_name=os.environ["OS_PROJECT_NAME"],
        user_domain_name="Default",
        project_domain_name="Default",
    )
    seen = {}
    seen["flavors"] = sorted(f.name for f in conn.compute.flavors())
    image = conn.image.find_image("busybox", ignore_missing=False)
    flavor = conn.compute.find_flavor("m1.tiny", ignore_missing=False)
    net = conn.network.find_network(network, ignore_missing=False)
    seen["network_vni"] = net.provider_segmentation_id
    server = conn.compute.create_server(
        name=name,
        image_id=image.id,
        flavor_id=flavor.id,
        networks=[{"uuid": net.id}],
    )
    server = conn.compute.wait_for_server(server, status="ACTIVE", wait=120)
    seen["created"] = {"id": server.id, "status": server.status,
                       "host": server.compute_host,
                       "addresses": server.addresses}
    seen["listed"] = sorted(s.name for s in conn.compute.servers())
    conn.compute.stop_server(server)
    seen["stopped"] = conn.compute.wait_for_server(server, status="SHUTOFF", wait=60).status
    conn.compute.start_server(server)
    seen["started"] = conn.compute.wait_for_server(server, status="ACTIVE", wait=60).status
    try:
        conn.compute.create_server(name=name + "-x", image_id=image.id,
                                   flavor_id="no-such-flavor")
        seen["bad_flavor"] = "accepted"
    except exceptions.BadRequestException as e:
        seen["bad_flavor"] = e.details
    conn.compute.delete_server(server)
    conn.compute.wait_for_delete(server, wait=60)
    seen["after_delete"] = sorted(s.name for s in conn.compute.servers())
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
