// The room picker: go to the chosen room's page, with the token when one is given.
document.getElementById('pick').addEventListener('submit', (e) => {
  e.preventDefault();
  const room = document.getElementById('room').value.trim();
  const token = document.getElementById('token').value.trim();
  location.href = '/room/' + encodeURIComponent(room) + (token ? '?token=' + encodeURIComponent(token) : '');
});
