"""Contacts: list shape and filters, upsert, edit and merge, delete, batch (reference §1)."""

from __future__ import annotations

import httpx

from tests.sandbox.mautic.conftest import Sandbox, new_contact


async def test_empty_list_is_an_object_and_total_a_string(api: httpx.AsyncClient) -> None:
    response = await api.get(
        "/contacts",
        params={"where[0][val]": "unicorn", "where[0][col]": "email", "where[0][expr]": "eq"},
    )
    assert response.status_code == 200
    assert response.content == b'{"total":"0","contacts":{}}'


async def test_list_is_keyed_by_id_and_search_email_is_a_prefix_match(
    api: httpx.AsyncClient,
) -> None:
    a = await new_contact(api, email="jo@x.com", firstname="Jo")
    b = await new_contact(api, email="jo@x.com.au", firstname="Joanne")
    body = (await api.get("/contacts", params={"search": "email:jo@x.com"})).json()
    assert body["total"] == "2"
    assert set(body["contacts"]) == {str(a["id"]), str(b["id"])}
    strict = (await api.get("/contacts", params={"search": "email:+jo@x.com"})).json()
    assert list(strict["contacts"]) == [str(a["id"])]
    exact = (
        await api.get(
            "/contacts",
            params={"where[0][col]": "email", "where[0][expr]": "eq", "where[0][val]": "JO@X.COM"},
        )
    ).json()
    assert list(exact["contacts"]) == [str(a["id"])]
    negated = (await api.get("/contacts", params={"search": "!email:jo@x.com.au"})).json()
    assert list(negated["contacts"]) == [str(a["id"])]


async def test_paging_ordering_minimal_and_limit_zero(api: httpx.AsyncClient) -> None:
    ids = [(await new_contact(api, email=f"p{i}@x.com", points=i + 1))["id"] for i in range(5)]
    page = (
        await api.get(
            "/contacts", params={"orderBy": "id", "orderByDir": "DESC", "start": 1, "limit": 2}
        )
    ).json()
    assert list(page["contacts"]) == [str(ids[3]), str(ids[2])]
    assert page["total"] == "5"
    everything = (
        await api.get("/contacts", params={"limit": 0, "start": 3, "orderBy": "id"})
    ).json()
    assert len(everything["contacts"]) == 5  # limit=0 ignores start
    minimal = (await api.get("/contacts", params={"minimal": 1, "limit": 1})).json()
    only = next(iter(minimal["contacts"].values()))
    assert "tags" not in only and "owner" not in only and "fields" in only
    where = (
        await api.get(
            "/contacts",
            params={
                "where[0][col]": "points",
                "where[0][expr]": "gte",
                "where[0][val]": "4",
                "orderBy": "points",
            },
        )
    ).json()
    assert [c["points"] for c in where["contacts"].values()] == [4, 5]


async def test_new_is_an_upsert_on_email_201_with_location_then_200(api: httpx.AsyncClient) -> None:
    created = await api.post(
        "/contacts/new", json={"email": "Jane@Example.com", "firstname": "Jane"}
    )
    assert created.status_code == 201
    contact = created.json()["contact"]
    assert created.headers["location"].endswith(f"/api/contacts/{contact['id']}")
    assert created.headers["mautic-version"] == "5.1.0"
    assert list(contact["fields"]["all"])[0] == "id"
    assert contact["doNotContact"] == [] and contact["points"] == 0
    assert contact["fields"]["personal"] == []
    updated = await api.post("/contacts/new", json={"email": "jane@example.com", "lastname": "Doe"})
    assert updated.status_code == 200
    assert "location" not in updated.headers
    again = updated.json()["contact"]
    assert again["id"] == contact["id"]
    assert again["fields"]["all"]["firstname"] == "Jane"
    assert again["fields"]["all"]["lastname"] == "Doe"


async def test_blanks_are_ignored_unless_overwrite_with_blank_and_zeros_are_dropped(
    api: httpx.AsyncClient,
) -> None:
    c = await new_contact(api, email="z@x.com", lastname="Keep", points=5, city="Oslo")
    kept = (await api.patch(f"/contacts/{c['id']}/edit", json={"lastname": "", "points": 0})).json()
    assert kept["contact"]["fields"]["all"]["lastname"] == "Keep"
    assert kept["contact"]["points"] == 5  # integer 0 dropped on PATCH
    cleared = (
        await api.patch(
            f"/contacts/{c['id']}/edit", json={"lastname": "", "overwriteWithBlank": True}
        )
    ).json()
    assert cleared["contact"]["fields"]["all"]["lastname"] is None
    assert cleared["contact"]["fields"]["all"]["city"] == "Oslo"


async def test_patch_missing_is_404_put_missing_creates_a_new_id(api: httpx.AsyncClient) -> None:
    missing = await api.patch("/contacts/999/edit", json={"firstname": "X"})
    assert missing.status_code == 404
    assert missing.json() == {
        "errors": [{"code": 404, "message": "Item was not found.", "details": []}]
    }
    put = await api.put("/contacts/999/edit", json={"email": "put@x.com"})
    assert put.status_code == 201
    assert put.json()["contact"]["id"] != 999


async def test_put_clears_absent_fields_and_keeps_tags(api: httpx.AsyncClient) -> None:
    c = await new_contact(api, email="put2@x.com", firstname="A", city="B", tags=["keep"])
    body = (await api.put(f"/contacts/{c['id']}/edit", json={"email": "put2@x.com"})).json()
    assert body["contact"]["fields"]["all"]["firstname"] is None
    assert body["contact"]["fields"]["all"]["city"] is None
    assert [t["tag"] for t in body["contact"]["tags"]] == ["keep"]


async def test_email_change_onto_another_contact_merges_and_deletes_it(
    api: httpx.AsyncClient, sandbox: Sandbox
) -> None:
    winner = await new_contact(api, email="w@x.com", firstname="Win")
    loser = await new_contact(api, email="l@x.com", lastname="Lose", points=3, tags=["theirs"])
    merged = (await api.patch(f"/contacts/{winner['id']}/edit", json={"email": "l@x.com"})).json()
    assert merged["contact"]["id"] == winner["id"]
    assert merged["contact"]["fields"]["all"]["lastname"] == "Lose"
    assert [t["tag"] for t in merged["contact"]["tags"]] == ["theirs"]
    assert (await api.get(f"/contacts/{loser['id']}")).status_code == 404


async def test_tags_are_added_and_minus_tag_removes(api: httpx.AsyncClient) -> None:
    c = await new_contact(api, email="t@x.com", tags=["one", "two"])
    body = (await api.patch(f"/contacts/{c['id']}/edit", json={"tags": ["three", "-one"]})).json()
    assert [t["tag"] for t in body["contact"]["tags"]] == ["two", "three"]
    tags = (await api.get("/tags")).json()
    assert {t["tag"] for t in tags["tags"]} == {"one", "two", "three"}


async def test_validation_error_body_and_nothing_written(api: httpx.AsyncClient) -> None:
    response = await api.post("/contacts/new", json={"email": "notanemail", "firstname": "X"})
    assert response.status_code == 400
    assert response.json() == {
        "errors": [
            {
                "code": 400,
                "message": "email: notanemail is invalid.",
                "details": {"email": ["notanemail is invalid."]},
            }
        ]
    }
    assert (await api.get("/contacts")).json()["total"] == "0"


async def test_delete_returns_the_contact_with_a_null_id(api: httpx.AsyncClient) -> None:
    c = await new_contact(api, email="d@x.com")
    response = await api.delete(f"/contacts/{c['id']}/delete")
    assert response.status_code == 200
    assert response.json()["contact"]["id"] is None
    assert (await api.delete(f"/contacts/{c['id']}/delete")).status_code == 404


async def test_batch_new_per_item_status_codes_and_keyed_errors(api: httpx.AsyncClient) -> None:
    await new_contact(api, email="b2@x.com")
    response = await api.post(
        "/contacts/batch/new",
        json=[{"email": "b1@x.com"}, {"email": "bad"}, {"email": "b2@x.com", "firstname": "B"}],
    )
    assert response.status_code == 201
    body = response.json()
    assert body["statusCodes"] == [201, 400, 200]
    assert set(body["contacts"]) == {"0", "2"}  # a failed middle item makes it an object
    assert body["errors"]["1"]["code"] == 400
    assert body["errors"]["1"]["type"] is None
    again = (await api.post("/contacts/batch/new", json=[{"email": "b1@x.com,"}])).json()
    assert again["statusCodes"] == [200]  # the sanitised email dedupes onto b1@x.com


async def test_batch_limit_is_a_500(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/contacts/batch/new", json=[{"email": f"{i}@x.com"} for i in range(201)]
    )
    assert response.status_code == 500
    assert response.json() == {
        "errors": [
            {
                "code": 500,
                "message": "A max of 200 entities are supported at a time.",
                "details": [],
            }
        ]
    }
    ok = await api.post("/contacts/batch/new", json=[{"email": f"{i}@x.com"} for i in range(200)])
    assert ok.status_code == 201
    assert ok.json()["statusCodes"] == [201] * 200


async def test_batch_edit_by_id_patch_404_put_creates_duplicates(api: httpx.AsyncClient) -> None:
    c = await new_contact(api, email="e@x.com")
    patched = await api.patch(
        "/contacts/batch/edit",
        json=[{"id": c["id"], "firstname": "E"}, {"id": 999, "firstname": "F"}],
    )
    assert patched.status_code == 200
    body = patched.json()
    assert body["statusCodes"] == [200, 404]
    assert body["errors"]["1"] == {"message": "Item was not found.", "code": 404, "type": "api"}
    put = (await api.put("/contacts/batch/edit", json=[{"email": "e@x.com"}])).json()
    assert put["statusCodes"] == [201]
    assert put["contacts"][0]["id"] != c["id"]  # PUT without id: a second e@x.com


async def test_form_encoded_bodies_parse_the_php_way(api: httpx.AsyncClient) -> None:
    response = await api.post(
        "/contacts/new",
        content="email=f@x.com&tags[]=a&tags[]=b&firstname=F",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 201
    contact = response.json()["contact"]
    assert [t["tag"] for t in contact["tags"]] == ["a", "b"]


async def test_unknown_route_and_pre_26_urls_are_404(api: httpx.AsyncClient) -> None:
    c = await new_contact(api, email="r@x.com")
    old = await api.post(f"/contacts/{c['id']}/dnc/add/email")
    assert old.status_code == 404
    assert (
        old.json()["errors"][0]["message"]
        == f'No route found for "POST /api/contacts/{c["id"]}/dnc/add/email"'
    )
    assert b"\\/api\\/contacts" in old.content


async def test_batch_delete_and_form_encoded_batches(api: httpx.AsyncClient) -> None:
    form = "0[email]=f0@x.com&1[email]=f1@x.com&1[firstname]=One&1[firstname]=Last"
    created = await api.post(
        "/contacts/batch/new",
        content=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert created.status_code == 201
    body = created.json()
    assert body["statusCodes"] == [201, 201]
    assert body["contacts"][1]["fields"]["all"]["firstname"] == "Last"  # PHP keeps the last
    ids = [c["id"] for c in body["contacts"]]
    deleted = await api.delete("/contacts/batch/delete", params={"ids": f"{ids[0]},{ids[1]},999"})
    assert deleted.status_code == 200
    out = deleted.json()
    assert [c["id"] for c in out["contacts"]] == [None, None]
    assert out["errors"]["2"]["code"] == 404


async def test_where_or_in_and_date_filters(api: httpx.AsyncClient) -> None:
    a = await new_contact(api, email="w1@x.com", city="Oslo")
    b = await new_contact(api, email="w2@x.com", city="Rome")
    await new_contact(api, email="w3@x.com", city="Paris")
    either = (
        await api.get(
            "/contacts",
            params={
                "where[0][expr]": "orX",
                "where[0][val][0][col]": "city",
                "where[0][val][0][expr]": "eq",
                "where[0][val][0][val]": "Oslo",
                "where[0][val][1][col]": "email",
                "where[0][val][1][expr]": "eq",
                "where[0][val][1][val]": "w2@x.com",
                "orderBy": "id",
            },
        )
    ).json()
    assert list(either["contacts"]) == [str(a["id"]), str(b["id"])]
    listed = (
        await api.get(
            "/contacts",
            params={
                "where[0][col]": "id",
                "where[0][expr]": "in",
                "where[0][val]": f"{a['id']},{b['id']}",
            },
        )
    ).json()
    assert set(listed["contacts"]) == {str(a["id"]), str(b["id"])}
    since = (
        await api.get(
            "/contacts",
            params={
                "where[0][col]": "date_added",
                "where[0][expr]": "gte",
                "where[0][val]": "2000-01-01 00:00:00",
            },
        )
    ).json()
    assert since["total"] == "3"
    never_modified = (
        await api.get(
            "/contacts", params={"where[0][col]": "date_modified", "where[0][expr]": "isNull"}
        )
    ).json()
    assert never_modified["total"] == "3"
