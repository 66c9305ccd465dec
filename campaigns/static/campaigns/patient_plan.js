// The patient page's planned-messages panel: the dry run takes longer than the page, so it
// is fetched once the page is shown and put in place. Without script, the link opens it.
(function () {
    "use strict";
    function load() {
        const place = document.getElementById("planned-messages");
        if (!place || !place.dataset.url) {
            return;
        }
        fetch(place.dataset.url, {credentials: "same-origin", headers: {"X-Requested-With": "fetch"}})
            .then(function (response) {
                if (!response.ok) {
                    throw new Error(String(response.status));
                }
                return response.text();
            })
            .then(function (html) {
                const holder = document.createElement("div");
                holder.innerHTML = html;
                const panel = holder.querySelector("#planned-messages");
                if (panel) {
                    place.replaceWith(panel);
                }
            })
            .catch(function () {
                place.classList.add("plan-failed");
            });
    }
    if (document.readyState === "loading") {
        document.addEventListener("DOMContentLoaded", load);
    } else {
        load();
    }
})();
