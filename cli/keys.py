"""``bdscreen keys``: API keys of the gateway (stored hashed in the scan records) and the webhook secret."""

import argparse
import sys


def add_keys_parser(commands: argparse._SubParsersAction) -> None:
    keys = commands.add_parser("keys", help="manage the gateway's API keys and show the webhook secret")
    keys.add_argument("--storage", help="storage path (BDSCREEN_STORAGE)")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="create a key for NAME and print it (shown only once)")
    create.add_argument("name")
    actions.add_parser("list", help="list key names")
    revoke = actions.add_parser("revoke", help="revoke NAME's key (its scans stay, unreachable)")
    revoke.add_argument("name")
    actions.add_parser("webhook-secret", help="print the HMAC secret that signs webhooks")
    keys.set_defaults(run=run_keys)


def run_keys(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import IntegrityError

    from cli.serve import apply_settings
    from worker.core.store import store_for
    from worker.core.store.keys import hash_api_key, new_api_key
    from worker.core.webhooks import webhook_secret

    settings = apply_settings(args)
    records = store_for(settings).records
    if args.action == "create":
        key = new_api_key()
        try:
            records.add_key(args.name, hash_api_key(key))
        except IntegrityError:
            print(f"bdscreen: bad-option: a key named {args.name!r} exists; revoke it first.", file=sys.stderr)
            return 2
        print(key)
    elif args.action == "list":
        print("\n".join(records.key_names()))
    elif args.action == "revoke":
        if not records.remove_key(args.name):
            print(f"bdscreen: bad-option: no key named {args.name!r}.", file=sys.stderr)
            return 2
    else:
        print(webhook_secret(settings).decode())
    return 0
